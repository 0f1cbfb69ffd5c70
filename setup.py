"""For Beam's `--setup_file ./setup.py` (runners whose workers install a staged source
package of the project, such as Dataflow's): Beam wants a file of this name and builds the
package with `python setup.py sdist`. Everything about the package is in pyproject.toml."""

from setuptools import setup

setup()
