"""Revision files; a package only so that setuptools ships them."""
