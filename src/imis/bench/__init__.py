"""imis.bench"""
