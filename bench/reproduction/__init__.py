"""The AERO reproduction (arXiv 2410.13060) behind `bench/reproduce.py`."""
