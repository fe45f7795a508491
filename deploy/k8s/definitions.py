"""The code location of a Kubernetes deployment: the project's Definitions, with every step in its own pod.

Point the user-code server at this file from the repo root (the working directory puts `pipelines` on the path):

    dagster api grpc --python-file deploy/k8s/definitions.py --working-directory . --port 3030

(in the dagster Helm chart: `dagsterApiGrpcArgs` of the user deployment). What each pod gets (image, resources,
GPUs) is configuration: deploy/k8s/dagster.yaml (the instance: run launcher) and deploy/k8s/run_config.yaml (the
executor: per-step pods), not this file.
"""

import dagster as dg
from dagster_k8s import k8s_job_executor

from pipelines.definitions import defs as project_defs

defs = dg.Definitions.merge(project_defs, dg.Definitions(executor=k8s_job_executor))
