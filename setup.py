from setuptools import find_packages, setup

import re
from pathlib import Path

version = re.search(r'__version__ = "([^"]+)"', Path("tinyseq/__init__.py").read_text()).group(1)

setup(
    name="tinyseq",
    version=version,
    description="Tiny NumPy transformers and RNNs on toy hidden Markov processes, measured against exact beliefs",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tinyseq", "tinyseq.*"]),
    py_modules=["cli"],
    install_requires=["numpy>=1.24", "numba>=0.58", "click>=8.0", "tabulate>=0.9"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        "plot": ["matplotlib>=3.5"],
        "dask": ["dask[distributed]>=2023.1"],
    },
    entry_points={"console_scripts": ["tinyseq=cli:main"]},
)
