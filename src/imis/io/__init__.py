"""imis.io"""
