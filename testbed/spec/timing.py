"""Reading a topology's `kubernetes:` section into Timing: how long Kubernetes and the cloud take
to act, in the names of the fields and flags that set each delay upstream.

```yaml
kubernetes:
  timing: realistic                 # or instant: every change at once, in the best order
  readinessProbe: {periodSeconds: 10, initialDelaySeconds: 0, failureThreshold: 3,
                   successThreshold: 1}
  terminationGracePeriodSeconds: 30
  preStopSeconds: 0                 # the preStop hook's sleep
  kubeProxy: {minSyncPeriod: 1s,    # --iptables-min-sync-period
              syncPeriod: 30s}      # --iptables-sync-period (canary checks, retries)
  endpointUpdatesBatchPeriod: 0s    # kube-controller-manager --endpointslice-updates-batch-period
  nodeMonitorGracePeriod: 50s       # kube-controller-manager --node-monitor-grace-period
  notReadyTolerationSeconds: 300    # the not-ready taint's toleration on every pod
  loadBalancer: {registrationDelay: 0s, deregistrationLag: 0s, deregistrationDelay: 300s}
```

Fields named ...Seconds take a number of seconds as Kubernetes' API does (fractions allowed
here, to run experiments faster); the others take durations as Kubernetes' flags do (1s, 500ms,
5m).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from testbed.spec.fields import Converter, Reader, choice, go_duration, integer, number
from testbed.spec.model import TIMING_MODES, Timing

DEFAULTS = {f.name: f.default for f in fields(Timing)}
HOUR = 3600.0
DAY = 86400.0


def read_kubernetes(r: Reader) -> Timing:
    path = ("kubernetes",)
    r.mapping(path, {"timing", "readinessProbe", "terminationGracePeriodSeconds",
                     "preStopSeconds", "kubeProxy", "endpointUpdatesBatchPeriod",
                     "nodeMonitorGracePeriod", "notReadyTolerationSeconds", "loadBalancer"})
    got: dict[str, object] = {}

    def put(attr: str, sub: tuple[str, ...], key: str, convert: Converter[Any], fix: str) -> None:
        value = r.get(path + sub, key, convert, default=DEFAULTS[attr], fix=fix)
        if value is not None:
            got[attr] = value

    put("mode", (), "timing", choice(*TIMING_MODES),
        "write timing: realistic (upstream's delays) or timing: instant")
    probe = ("readinessProbe",)
    r.mapping(path + probe, {"periodSeconds", "initialDelaySeconds", "failureThreshold",
                             "successThreshold"})
    put("readiness_period_s", probe, "periodSeconds", number(0.1, HOUR),
        "seconds between 0.1 and 3600 (Kubernetes' default: 10)")
    put("readiness_initial_delay_s", probe, "initialDelaySeconds", number(0, HOUR),
        "seconds between 0 and 3600 (default 0)")
    put("readiness_failure_threshold", probe, "failureThreshold", integer(1, 100),
        "a count between 1 and 100 (default 3)")
    put("readiness_success_threshold", probe, "successThreshold", integer(1, 100),
        "a count between 1 and 100 (default 1)")
    put("termination_grace_period_s", (), "terminationGracePeriodSeconds", number(0, HOUR),
        "seconds between 0 and 3600 (default 30)")
    put("pre_stop_s", (), "preStopSeconds", number(0, HOUR),
        "seconds between 0 and 3600 (default 0)")
    proxy = ("kubeProxy",)
    r.mapping(path + proxy, {"minSyncPeriod", "syncPeriod"})
    put("min_sync_period_s", proxy, "minSyncPeriod", go_duration(HOUR / 6),
        "write a duration like 1s (kube-proxy's default) or 0s")
    put("sync_period_s", proxy, "syncPeriod", go_duration(HOUR),
        "write a duration like 30s (kube-proxy's default) or 2s")
    put("endpoint_updates_batch_period_s", (), "endpointUpdatesBatchPeriod", go_duration(60),
        "write a duration of at most 1m, like 500ms (default 0s: at once)")
    put("node_monitor_grace_period_s", (), "nodeMonitorGracePeriod", go_duration(HOUR),
        "write a duration like 50s (the default since Kubernetes 1.32; 40s before)")
    put("not_ready_toleration_s", (), "notReadyTolerationSeconds", number(0, DAY),
        "seconds between 0 and 86400 (default 300)")
    lb = ("loadBalancer",)
    r.mapping(path + lb, {"registrationDelay", "deregistrationLag", "deregistrationDelay"})
    put("lb_registration_delay_s", lb, "registrationDelay", go_duration(HOUR),
        "write a duration like 10s (default 0s)")
    put("lb_deregistration_lag_s", lb, "deregistrationLag", go_duration(HOUR),
        "write a duration like 5s (default 0s)")
    # AWS target groups: deregistration_delay.timeout_seconds, 0-3600, default 300
    put("lb_deregistration_delay_s", lb, "deregistrationDelay", go_duration(HOUR),
        "write a duration of at most 1h, like 300s (AWS's default) or 0s")
    timing = Timing(**got)   # type: ignore[arg-type]
    if "sync_period_s" in got and timing.sync_period_s < 0.1:
        # upstream refuses 0 ("must be greater than 0"); checking a canary more often than
        # ten times a second is only load
        r.problem(path + proxy + ("syncPeriod",), f"{timing.sync_period_s:g}s is too short",
                  "write a duration of at least 100ms, like 30s (kube-proxy's default) or 2s")
    both = {"pre_stop_s", "termination_grace_period_s"} <= got.keys()
    if both and timing.pre_stop_s > timing.termination_grace_period_s:
        # as the API server's check of a preStop sleep: it must fit in the grace period
        r.problem(path + ("preStopSeconds",), f"{timing.pre_stop_s:g}s is longer than "
                  f"terminationGracePeriodSeconds ({timing.termination_grace_period_s:g}s)",
                  "make preStopSeconds at most terminationGracePeriodSeconds, or raise it")
    return timing

