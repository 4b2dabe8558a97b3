"""imis.data"""
