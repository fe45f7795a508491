"""The Kubernetes deployment files (deploy/k8s/) against dagster-k8s itself, with no cluster: the instance file and
the run config pass its config schemas, dagster-k8s builds from them the Kubernetes Job each step would get (GPU
steps with GPUs on GPU nodes, the rest without), and a wrong field is rejected naming the field."""

from __future__ import annotations

import copy
import importlib.util
import types
from functools import cache
from unittest import mock

import dagster as dg
import kubernetes
import pytest
import yaml
from dagster._config import process_config, validate_config
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.executor.init import InitExecutorContext
from dagster._core.instance.config import dagster_instance_config_schema
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import construct_dagster_k8s_job

from pipelines.profiles import load_profile
from tests.ops.servers import REPO

pytestmark = pytest.mark.k8s

DEPLOY = REPO / "deploy" / "k8s"
GPU = "nvidia.com/gpu"
JOB = "sft_pipeline"  # the whole graph


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


@cache
def k8s_defs() -> dg.Definitions:
    spec = importlib.util.spec_from_file_location("sft_k8s_definitions", DEPLOY / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs


def errors(result) -> str:
    return "\n".join(error.message for error in result.errors)


def uses_engine(job: dg.JobDefinition, op: str) -> bool:
    return "engine" in next(node for node in job.graph.node_defs if node.name == op).required_resource_keys


def gpu_ops(job: dg.JobDefinition) -> set[str]:
    """Ops that need a GPU on a GPU deployment, derived from the graph: the `gpu` pool, or the vLLM engine."""
    return {node.name for node in job.graph.node_defs if node.pool == "gpu" or uses_engine(job, node.name)}


# ---- the instance file ------------------------------------------------------------------------------------------
def test_instance_file_passes_dagsters_schema_and_the_k8s_run_launchers():
    instance = load("dagster.yaml")
    result = validate_config(dagster_instance_config_schema(), instance)
    assert result.success, errors(result)
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, errors(result)


def test_instance_file_agrees_with_the_default_except_where_a_cluster_differs():
    default, cluster = yaml.safe_load((REPO / "dagster.yaml").read_text()), load("dagster.yaml")
    shared = yaml.safe_load((REPO / "deploy" / "postgres" / "dagster.yaml").read_text())
    assert cluster["storage"] == shared["storage"]
    for key in set(default) - {"storage", "concurrency"}:
        assert cluster.get(key) == default[key], f"deploy/k8s/dagster.yaml: '{key}' differs from dagster.yaml"
    # the `gpu` pool's limit is the deployment's GPUs: one on the default single machine, the cluster's here
    assert cluster["concurrency"]["pools"]["default_limit"] >= default["concurrency"]["pools"]["default_limit"] == 1


@pytest.mark.parametrize("field", ["run_launcher.config.servce_account_name", "run_launcher.config.job_namspace"])
def test_a_wrong_run_launcher_field_is_rejected_naming_it(field):
    instance = load("dagster.yaml")
    *parents, name = field.split(".")
    target = instance
    for parent in parents:
        target = target[parent]
    target[name] = "x"
    result = validate_config(K8sRunLauncher.config_type(), instance["run_launcher"]["config"])
    assert not result.success and name in errors(result)


# ---- the run config (k8s_job_executor) -----------------------------------------------------------------------------
def test_the_k8s_code_location_runs_every_job_on_the_k8s_executor():
    for job in k8s_defs().resolve_all_job_defs():
        assert job.executor_def is k8s_job_executor, job.name


def test_run_config_with_the_gpu_profile_is_valid_for_the_pipeline():
    run_config = load("run_config.yaml")
    result = validate_config(k8s_job_executor.config_schema.config_type, run_config["execution"]["config"])
    assert result.success, errors(result)
    job = k8s_defs().resolve_job_def(JOB)
    assert dg.validate_run_config(job, {**load_profile("gpu-example"), **run_config})


def test_a_wrong_executor_field_is_rejected_naming_it():
    run_config = load("run_config.yaml")
    run_config["execution"]["config"]["per_step_k8s_confg"] = run_config["execution"]["config"].pop(
        "per_step_k8s_config")
    with pytest.raises(dg.DagsterInvalidConfigError, match="per_step_k8s_confg"):
        dg.validate_run_config(k8s_defs().resolve_job_def(JOB), run_config)


def test_per_step_config_names_ops_of_the_graph_and_covers_every_gpu_op():
    job = k8s_defs().resolve_job_def(JOB)
    per_step = load("run_config.yaml")["execution"]["config"]["per_step_k8s_config"]
    ops = {node.name for node in job.graph.node_defs}
    assert set(per_step) <= ops, f"per_step_k8s_config names no op of {JOB}: {sorted(set(per_step) - ops)}"
    missing = gpu_ops(job) - set(per_step)
    assert not missing, f"ops that need a GPU have no per_step_k8s_config in deploy/k8s/run_config.yaml: {missing}"


# ---- the pods dagster-k8s would create -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def step_handler():
    """dagster-k8s's own step handler, built by its executor from our run config, on an instance whose run launcher
    is built by Dagster from deploy/k8s/dagster.yaml. No cluster: loading the in-cluster credentials is skipped."""
    launcher = load("dagster.yaml")["run_launcher"]
    job = k8s_defs().resolve_job_def(JOB)
    executor_config = process_config(k8s_job_executor.config_schema.config_type,
                                     load("run_config.yaml")["execution"]["config"])
    assert executor_config.success, errors(executor_config)
    with mock.patch.object(kubernetes.config, "load_incluster_config"), \
            dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        assert isinstance(instance.run_launcher, K8sRunLauncher)
        executor = k8s_job_executor.executor_creation_fn(InitExecutorContext(
            job=InMemoryJob(job), executor_def=k8s_job_executor, executor_config=executor_config.value,
            instance=instance))
        yield executor._step_handler, instance, job


def step_pod(step_handler, op: str) -> kubernetes.client.V1PodSpec:
    """The pod spec of the Kubernetes Job dagster-k8s would launch for `op` (its own container-context merge, then
    its own job construction, which rejects a key Kubernetes does not know)."""
    handler, instance, job = step_handler
    run = dg.DagsterRun(job_name=job.name, run_id="0" * 36)
    context = types.SimpleNamespace(
        execute_step_args=types.SimpleNamespace(step_keys_to_execute=[op]),
        dagster_run=run, instance=instance, step_tags={op: {}},
        get_step_context=lambda key: types.SimpleNamespace(step=types.SimpleNamespace(op_name=key)))
    container_context = handler._get_container_context(context)  # the executor's own merge (a private method)
    job_config = container_context.get_k8s_job_config(None, instance.run_launcher)
    k8s_job = construct_dagster_k8s_job(job_config, args=["dagster", "api", "execute_step"], job_name=f"step-{op}",
                                        user_defined_k8s_config=container_context.run_k8s_config,
                                        component="step_worker")
    assert container_context.namespace == "sft-factory"
    return k8s_job.spec.template.spec


def test_gpu_ops_get_gpu_pods_and_tensor_parallel_gpus(step_handler):
    _, _, job = step_handler
    engine = load_profile("gpu-example")["resources"]["engine"]["config"]
    for op in sorted(gpu_ops(job)):
        pod = step_pod(step_handler, op)
        resources = pod.containers[0].resources
        gpus = int(resources.limits[GPU])
        assert gpus >= 1 and int(resources.requests[GPU]) == gpus, (op, resources)
        if uses_engine(job, op):
            assert gpus == engine["tensor_parallel_size"], (
                f"{op}: {gpus} GPUs but the engine's tensor_parallel_size is {engine['tensor_parallel_size']}: "
                "vLLM shards the model over exactly that many")
        assert pod.node_selector == {f"{GPU}.present": "true"} and pod.tolerations[0].key == GPU, op
        assert pod.containers[0].image == load("dagster.yaml")["run_launcher"]["config"]["job_image"]
        assert {m.mount_path for m in pod.containers[0].volume_mounts} == {"/data"}


def test_cpu_ops_get_no_gpu(step_handler):
    _, _, job = step_handler
    cpu_ops = {node.name for node in job.graph.node_defs} - gpu_ops(job)
    assert {"eval_sets", "deduplicated_conversations", "filtered_conversations"} <= cpu_ops
    for op in sorted(cpu_ops):
        resources = step_pod(step_handler, op).containers[0].resources
        assert GPU not in (resources.limits or {}) and GPU not in (resources.requests or {}), (op, resources)
        assert resources.requests["memory"] == "16Gi", (op, resources)


def test_a_key_kubernetes_does_not_know_is_rejected_naming_it(step_handler):
    handler, _, _ = step_handler
    original = handler._per_step_k8s_config
    broken = copy.deepcopy(original)
    resources = broken["sft_model"]["container_config"].pop("resources")
    broken["sft_model"]["container_config"]["resorces"] = resources
    with mock.patch.object(handler, "_per_step_k8s_config", broken), pytest.raises(Exception, match="resorces"):
        step_pod(step_handler, "sft_model")
