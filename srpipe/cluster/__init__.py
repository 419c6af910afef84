"""Where work runs: site profiles, the local executor (in-process / process pool), Slurm submission (submitit arrays
and jobs, MPI ranks), status and resubmit, container wrapping. The stages never import this package; the CLI picks an
executor here and hands it to `srpipe.chain.run_chain`."""
