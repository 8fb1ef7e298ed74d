"""ament_python package blip_captioner; it holds its own launch/ and config/ (the repository top level links here)."""

from glob import glob

from setuptools import setup

PACKAGE = "blip_captioner"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE}/config", ["config/captioner.yaml", "config/cyclonedds.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="blip-lora maintainers",
    maintainer_email="maintainers@blip-lora.invalid",
    description="ROS 2 node that captions camera images with BLIP and a LoRA adapter",
    license="MIT",
    entry_points={"console_scripts": [f"{PACKAGE} = {PACKAGE}.node:main"]},
)
