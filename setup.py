"""Metadata lives in setup.cfg; this file only declares the C extension (the InfluxDB sink's
line-protocol encoder, fieldhub/sinks/influx/_lpenc.c), which setup.cfg cannot."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("fieldhub.sinks.influx._lpenc", ["fieldhub/sinks/influx/_lpenc.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
