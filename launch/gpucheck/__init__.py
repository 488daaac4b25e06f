"""The GPU check for an air-gapped GPU node (docs/gpu-check.md): the kit of wheels the node lacks
(`kit`), the three device calls with their bytes and budgets (`plan`), the code stamp (`provenance`),
the commands that run there (`check`, `stages`), and a CPU rehearsal of them (`rehearse`). The
modules that run on the node before the kit is unpacked import the standard library and `configs`
only; the stages start the project's programs in subprocesses."""
