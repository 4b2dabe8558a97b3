"""imis.train"""
