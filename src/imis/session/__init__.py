"""imis.session"""
