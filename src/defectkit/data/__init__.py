"""Datasets: one sample record, readers for every layout, preprocessing and sampling."""
