"""imis.automask"""
