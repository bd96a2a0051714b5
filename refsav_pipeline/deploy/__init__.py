"""Running the pipeline where clusters run Ray: Slurm jobs and KubeRay manifests."""
