"""imis.models"""
