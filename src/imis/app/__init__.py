"""imis.app"""
