"""`imis serve`: the browser tool (FastAPI server + a static page of plain HTML, CSS and ES modules).

Built on the Session API (imis.session) and the readers/writers of imis.io; nothing imports this package
except the CLI's `serve` command, lazily.
"""
