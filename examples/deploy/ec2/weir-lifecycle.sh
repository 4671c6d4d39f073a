#!/bin/sh
# weir's companion on an Auto Scaling instance (weir-lifecycle.service):
# - scale-in: when the group marks this instance for termination (instance metadata
#   autoscaling/target-lifecycle-state = Terminated), stop weir gracefully (it commits its in-flight batches
#   and releases its leases) and then complete the `weir-drain` lifecycle hook, so the instance goes at once
#   instead of waiting out the hook's timeout;
# - health: when weir's /readyz has failed for WEIR_UNHEALTHY_AFTER checks in a row while the service runs,
#   report the instance unhealthy (SetInstanceHealth), and the group replaces it.
# Needs: curl, the AWS CLI, WEIR_GROUP (the Auto Scaling group's name). The rest has defaults.
set -u
GROUP=${WEIR_GROUP:?set WEIR_GROUP to the Auto Scaling group name}
HOOK=${WEIR_HOOK:-weir-drain}
IMDS=${WEIR_IMDS_URL:-http://169.254.169.254}
READYZ=${WEIR_READYZ_URL:-http://127.0.0.1:9898/readyz}
EVERY=${WEIR_CHECK_SECS:-15}
UNHEALTHY_AFTER=${WEIR_UNHEALTHY_AFTER:-20}
AWS=${WEIR_AWS_CLI:-aws}
SYSTEMCTL=${WEIR_SYSTEMCTL:-systemctl}

imds() { # path: IMDSv2 (a session token per call)
  token=$(curl -fsS -m 5 -X PUT "$IMDS/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60') &&
    curl -fsS -m 5 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/$1"
}

instance=""
while [ -z "$instance" ]; do
  instance=$(imds instance-id) || { instance=""; sleep "$EVERY"; }
done
failures=0
while :; do
  state=$(imds autoscaling/target-lifecycle-state || true)
  if [ "$state" = "Terminated" ]; then
    echo "weir-lifecycle: $instance is leaving the group; stopping weir"
    "$SYSTEMCTL" stop weir.service
    "$AWS" autoscaling complete-lifecycle-action --auto-scaling-group-name "$GROUP" \
      --lifecycle-hook-name "$HOOK" --instance-id "$instance" --lifecycle-action-result CONTINUE
    exit 0
  fi
  if "$SYSTEMCTL" is-active --quiet weir.service && ! curl -fs -m 5 -o /dev/null "$READYZ"; then
    failures=$((failures + 1))
  else
    failures=0
  fi
  if [ "$failures" -ge "$UNHEALTHY_AFTER" ]; then
    echo "weir-lifecycle: /readyz failed $failures times in a row; reporting $instance unhealthy"
    "$AWS" autoscaling set-instance-health --instance-id "$instance" --health-status Unhealthy
    failures=0
  fi
  sleep "$EVERY"
done
