"""Build hook: a wheel carries the shipped templates, environments and configs inside the package
(toolkit/_shipped/), so an installed toolkit needs no source tree. Everything else is in setup.cfg."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("templates", "envs", "configs")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:   # an editable install reads the checkout's own folders
            return
        target = Path(self.build_lib) / "toolkit" / "_shipped"
        for name in SHIPPED:
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(HERE / name, target / name, ignore=SKIP)


setup(cmdclass={"build_py": BuildWithData})
