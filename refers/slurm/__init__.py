"""Running the project's commands as Slurm jobs, through submitit.

* :mod:`refers.slurm.resources`: what a job asks Slurm for (only what was given);
* :mod:`refers.slurm.queue`: the job states from ``squeue`` (no accounting database needed), requeue;
* :mod:`refers.slurm.jobs`: the job itself, a command line run on the allocated node(s), with the
  ranks from Slurm's environment and a requeue on the signal Slurm sends before the time limit;
* :mod:`refers.slurm.submit`: the submitit executor, the generated ``sbatch`` script, submission.

``refers sweep --executor slurm`` (:mod:`refers.sweep_slurm`) and ``refers pretrain`` /
``refers finetune --submit slurm`` use them.
"""
