"""Postgres for shared deployments: a real PostgreSQL server (Debian's package) started by the test, the instance
file deploy/postgres/dagster.yaml selected the way users select it (DAGSTER_HOME + DAGSTER_PG_* variables), and
`eval_sets` materialized against it, in process and with the `dagster` CLI. What the instance reports is read back
from Postgres itself. initdb refuses to run as root, so the server runs as an unprivileged user."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from assets.common.orchestration.resources import EVAL_SETS, DataStorage
from assets.eval_sets.assets import eval_sets
from tests.ops.servers import REPO, free_port, listening, postgres_bindir, require_binary

pytestmark = pytest.mark.postgres

INSTANCE_DIR = REPO / "deploy" / "postgres"
SERVER_USER = "postgres"  # created by Debian's postgresql package; `nobody` otherwise


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str
    socket_dir: Path
    data_dir: Path

    def connect(self, dbname: str = "postgres"):
        import psycopg2  # installed with dagster-postgres

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=dbname)


def _as_user(user: str | None) -> dict:
    """subprocess arguments that run a command as `user` (we are root) or as ourselves."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@contextmanager
def postgres_server(bindir: Path) -> Iterator[Server]:
    """initdb + pg_ctl start on a free port of 127.0.0.1 (password auth, socket in the cluster's folder), as an
    unprivileged user when we are root; pg_ctl stop -m fast at the end, whatever happened."""
    user = None
    if os.geteuid() == 0:
        names = {entry.pw_name for entry in pwd.getpwall()}
        user = SERVER_USER if SERVER_USER in names else "nobody"
    # Not under pytest's tmp_path: that is private to root (0700), and the server's user must reach its folder.
    base = Path(tempfile.mkdtemp(prefix="sft-pg-"))
    server = Server("127.0.0.1", free_port(), "sft", secrets.token_hex(12), base / "socket", base / "data")
    server.socket_dir.mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(server.password + "\n")
    if user:
        entry = pwd.getpwnam(user)
        for path in (base, server.socket_dir, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        _run([bindir / "initdb", "-D", server.data_dir, "-U", server.user, "--pwfile", pwfile,
              "--auth", "scram-sha-256", "--encoding", "UTF8", "--no-locale", "--no-sync"], **_as_user(user))
        options = (f"-p {server.port} -c listen_addresses={server.host} -k {server.socket_dir} "
                   "-c fsync=off -c full_page_writes=off")
        # pg_ctl starts the server in its own session (process group); -w waits until it accepts connections.
        _run([bindir / "pg_ctl", "-D", server.data_dir, "-l", base / "server.log", "-o", options, "-w", "-t", "60",
              "start"], start_new_session=True, **_as_user(user))
        started = True
        yield server
    finally:
        if started:
            stop = subprocess.run([str(bindir / "pg_ctl"), "-D", str(server.data_dir), "-m", "fast", "-w", "-t",
                                   "60", "stop"], capture_output=True, text=True, **_as_user(user))
            if stop.returncode:  # not stopped: the last resort, then say so
                subprocess.run([str(bindir / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate", "stop"],
                               capture_output=True, **_as_user(user))
                raise AssertionError(f"pg_ctl stop -m fast failed: {stop.stdout}{stop.stderr}")
        shutil.rmtree(base, ignore_errors=True)


def parquet_rows(data_root: Path) -> int:
    folder = data_root / "eval_sets" / "data"
    return pl.scan_parquet(folder / (folder / "CURRENT").read_text().strip()).select(pl.len()).collect().item()


def test_postgres_instance_file_differs_from_the_default_only_in_storage():
    default = yaml.safe_load((REPO / "dagster.yaml").read_text())
    shared = yaml.safe_load((INSTANCE_DIR / "dagster.yaml").read_text())
    assert "sqlite" in default["storage"] and "postgres" in shared["storage"]
    assert {k: v for k, v in shared.items() if k != "storage"} == {k: v for k, v in default.items() if k != "storage"}


def test_materialize_against_a_real_postgres_server(tmp_path, monkeypatch):
    bindir = require_binary(postgres_bindir(), "postgresql")
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    with postgres_server(bindir) as server:
        conn = server.connect()
        conn.autocommit = True  # CREATE DATABASE runs outside a transaction
        conn.cursor().execute("CREATE DATABASE dagster")
        conn.close()
        pg_env = {"DAGSTER_PG_HOST": server.host, "DAGSTER_PG_PORT": str(server.port),
                  "DAGSTER_PG_USER": server.user, "DAGSTER_PG_PASSWORD": server.password, "DAGSTER_PG_DB": "dagster"}
        for name, value in pg_env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)  # the instance's local files (.dagster/) land here, not in the checkout

        # 1. In process: the instance loaded from the file, a real asset materialized against it.
        with dg.DagsterInstance.from_config(str(INSTANCE_DIR)) as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            result = dg.materialize([eval_sets], instance=instance,
                                    resources={"storage": DataStorage(root=str(tmp_path / "data"))})
            assert result.success
        rows = parquet_rows(tmp_path / "data")

        # 2. As users run it: DAGSTER_HOME names the folder, the dagster CLI materializes the same asset.
        cli = subprocess.run(
            [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "pipelines.definitions",
             "-d", str(REPO), "--select", "eval_sets"],
            env={**os.environ, **pg_env, "DAGSTER_HOME": str(INSTANCE_DIR), "SFT_DATA_ROOT": str(tmp_path / "cli")},
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, f"dagster asset materialize failed:\n{cli.stdout[-3000:]}\n{cli.stderr[-3000:]}"
        assert parquet_rows(tmp_path / "cli") == rows

        # A new instance (new connections) finds both runs and their materializations in Postgres.
        with dg.DagsterInstance.from_config(str(INSTANCE_DIR)) as instance:
            records = instance.fetch_materializations(EVAL_SETS, limit=10).records
            assert len(records) == 2
            assert result.run_id in {r.run_id for r in records}
            for record in records:
                assert instance.get_run_by_id(record.run_id).status == dg.DagsterRunStatus.SUCCESS
                assert record.asset_materialization.metadata["dagster/row_count"].value == rows
            run_ids = [r.run_id for r in records]

        # And straight from the database: the tables Dagster wrote.
        with server.connect("dagster") as conn, conn.cursor() as cursor:
            cursor.execute("SELECT run_id, status FROM runs")
            assert dict(cursor.fetchall()) == dict.fromkeys(run_ids, "SUCCESS")
            cursor.execute("SELECT run_id, event FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
                           "AND asset_key = %s", (EVAL_SETS.to_string(),))
            stored = cursor.fetchall()
            assert sorted(run_id for run_id, _ in stored) == sorted(run_ids)
            assert all('"dagster/row_count"' in event and str(rows) in event for _, event in stored)
            cursor.execute("SELECT count(*) FROM event_logs WHERE run_id = ANY(%s)", (run_ids,))
            events = cursor.fetchone()[0]
        conn.close()
        print(f"\nPostgreSQL {bindir} on {server.host}:{server.port}: 2 runs, {events} events, "
              f"{rows:,} rows per materialization")
        port = server.port
    assert not listening(port), f"PostgreSQL still listening on port {port} after pg_ctl stop"
