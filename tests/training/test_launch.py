"""Ranks and rank 0's address as torchrun, mpirun, horovodrun and srun set them (the variables, not the launchers)."""

from __future__ import annotations

import shutil

import pytest

from srpipe.training.launch import (
    Launch,
    first_host,
    launch_from_env,
    launcher_rank,
    launcher_size,
    rendezvous,
    slurm_port,
)

SRUN_STEP = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2"}


def test_launcher_rank_from_pmix_openmpi_or_multi_task_srun():
    assert launcher_rank({}) == 0
    assert launcher_rank({"PMIX_RANK": "1"}) == 1
    assert launcher_rank({"OMPI_COMM_WORLD_RANK": "3"}) == 3
    assert launcher_rank({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == 0
    assert launcher_rank({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == 1
    assert launcher_rank({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == 2


def test_launcher_size_from_openmpi_torchrun_or_srun_step():
    assert launcher_size({}) == 1
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert launcher_size({"SLURM_STEP_NUM_TASKS": "2"}) == 2
    assert launcher_size({"WORLD_SIZE": "3"}) == 3


def test_launch_reads_each_launcher_and_a_batch_shell_is_no_rank():
    assert launch_from_env({}) == Launch()
    assert launch_from_env(SRUN_STEP) == Launch(1, 2, 0, "srun")
    # the batch script's own shell has SLURM_NTASKS=2 and SLURM_PROCID=0, but no step: one process
    assert launch_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}) == Launch()
    ompi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    assert launch_from_env({**SRUN_STEP, **ompi}) == Launch(3, 4, 1, "mpirun")  # mpirun inside an allocation
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert launch_from_env({**ompi, **torchrun}) == Launch(5, 8, 1, "torchrun")


def test_rendezvous_from_master_variables_or_the_srun_step():
    assert rendezvous(Launch(), {}) is None
    assert rendezvous(Launch(0, 2, 0, "mpirun"), {"MASTER_ADDR": "n1", "MASTER_PORT": "29500"}) == ("n1", 29500)
    step = {**SRUN_STEP, "SLURM_STEP_NODELIST": "srn1", "SLURM_JOB_ID": "1234", "SLURM_STEP_ID": "1"}
    assert rendezvous(launch_from_env(step), {**step, "MASTER_ADDR": "srn1"}) == ("srn1", slurm_port(1234, 1))
    ports = {slurm_port(job, step) for job in range(100, 140) for step in range(4)}
    assert len(ports) == 160 and min(ports) >= 20000 and max(ports) < 40000


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="no Slurm client here")
def test_first_host_expands_a_slurm_node_list():
    assert first_host("srn[1-2]") == "srn1"
    assert first_host("vm,srn2") == "vm"
