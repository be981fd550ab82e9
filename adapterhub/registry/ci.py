"""CI provenance: labels and author from the standard environment of GitHub Actions and
GitLab CI (``push --ci``)."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping

from adapterhub.errors import ConfigError


def ci_labels(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``git.sha``, ``git.branch``, ``ci.run_url`` and ``ci.provider`` of the current CI job.

    Raises :class:`ConfigError` outside GitHub Actions and GitLab CI.
    """
    if environ.get("GITHUB_SHA"):
        run_url = None
        if all(environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY",
                                        "GITHUB_RUN_ID")):
            run_url = (f"{environ['GITHUB_SERVER_URL']}/{environ['GITHUB_REPOSITORY']}"
                       f"/actions/runs/{environ['GITHUB_RUN_ID']}")
        found = {"ci.provider": "github", "git.sha": environ["GITHUB_SHA"],
                 "git.branch": environ.get("GITHUB_REF_NAME"), "ci.run_url": run_url}
    elif environ.get("CI_COMMIT_SHA"):
        found = {"ci.provider": "gitlab", "git.sha": environ["CI_COMMIT_SHA"],
                 "git.branch": environ.get("CI_COMMIT_REF_NAME"),
                 "ci.run_url": environ.get("CI_PIPELINE_URL") or environ.get("CI_JOB_URL")}
    else:
        raise ConfigError("--ci: no CI environment found (neither GITHUB_SHA nor "
                          "CI_COMMIT_SHA is set)",
                          hint="Run inside GitHub Actions or GitLab CI, or pass --label K=V")
    return {key: value for key, value in found.items() if value}


def default_author(environ: Mapping[str, str] = os.environ) -> str | None:
    """Who is pushing: ``ADAPTERHUB_AUTHOR``, else the CI actor, else the login name."""
    for key in ("ADAPTERHUB_AUTHOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN"):
        if environ.get(key):
            return environ[key]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
