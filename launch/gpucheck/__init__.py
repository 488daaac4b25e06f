"""The device check: a kit of the wheels a bare GPU machine lacks (`kit`) and one script that measures
the GPU path there within a short loan (`check`). Standard library only, so both run before any of the
kit's packages are importable."""
