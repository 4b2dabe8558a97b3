"""Readers and writers of dataset layouts (IMed-361M, and more with the dataset-engine issue)."""
