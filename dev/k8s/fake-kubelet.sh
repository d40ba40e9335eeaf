#!/usr/bin/env bash
# fake-kubelet.sh - a tiny kwok-like simulator (NOT a kubelet, runs no containers).
# Stands in for a node on the local stack until the services' own runner replaces it.
# Registers $NODES fake Nodes (fake-node-0..), renews their Leases so the node-lifecycle
# controller keeps them Ready, marks Pods scheduled onto them as Running/Ready, and
# finishes graceful deletion of Pods on them (what a kubelet does after stopping containers).
# Started by start.sh when FAKE_NODES=N; stopped by stop.sh.
set -uo pipefail
KUBECTL="${KUBECTL:-kubectl}"
NODES="${NODES:-1}"
INTERVAL="${INTERVAL:-1}"
k() { "$KUBECTL" --request-timeout=10s "$@"; }
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
nowus() { date -u +%Y-%m-%dT%H:%M:%S.%6NZ; }

register_nodes() {
  local i n t; t=$(now)
  for i in $(seq 0 $((NODES - 1))); do
    n=fake-node-$i
    k get node "$n" >/dev/null 2>&1 && continue
    k create -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $n
  labels: {kubernetes.io/hostname: $n, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: fake}
status:
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  addresses: [{type: InternalIP, address: "10.99.0.$((i + 1))"}]
  nodeInfo: {architecture: amd64, operatingSystem: linux, kubeletVersion: v1.20.2-fake, kubeProxyVersion: fake,
             containerRuntimeVersion: fake://0, kernelVersion: fake, osImage: fake, machineID: "", systemUUID: "", bootID: ""}
  conditions:
  - {type: Ready, status: "True", reason: KubeletReady, message: fake kubelet is posting ready status, lastHeartbeatTime: "$t", lastTransitionTime: "$t"}
EOF
  done
}

renew_leases() {
  local i n ts t; ts=$(nowus); t=$(now)
  for i in $(seq 0 $((NODES - 1))); do
    n=fake-node-$i
    k apply -f - >/dev/null <<EOF
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: $n, namespace: kube-node-lease}
spec: {holderIdentity: $n, leaseDurationSeconds: 40, renewTime: "$ts"}
EOF
    # Post Ready like a kubelet does, so a node marked unreachable (e.g. after a restart) recovers.
    k patch node "$n" --subresource=status --type=strategic -p "{\"status\":{\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",\"message\":\"fake kubelet is posting ready status\",\"lastHeartbeatTime\":\"$t\"}]}}" >/dev/null 2>&1
  done
}

handle_pods() {
  local ns name node del phase containers ip t c cs
  t=$(now)
  k get pods -A --no-headers -o 'custom-columns=NS:.metadata.namespace,N:.metadata.name,NODE:.spec.nodeName,DEL:.metadata.deletionTimestamp,PH:.status.phase,C:.spec.containers[*].name' 2>/dev/null |
  while read -r ns name node del phase containers; do
    case "$node" in fake-node-*) ;; *) continue ;; esac
    if [ "$del" != "<none>" ]; then
      k -n "$ns" delete pod "$name" --grace-period=0 --force --wait=false >/dev/null 2>&1
      continue
    fi
    [ "$phase" = Pending ] || continue
    ip="10.244.$(( RANDOM % 250 + 1 )).$(( RANDOM % 250 + 1 ))"
    cs=""
    for c in ${containers//,/ }; do
      cs="$cs${cs:+,}{\"name\":\"$c\",\"ready\":true,\"started\":true,\"restartCount\":0,\"image\":\"fake\",\"imageID\":\"fake\",\"containerID\":\"fake://$name-$c\",\"state\":{\"running\":{\"startedAt\":\"$t\"}}}"
    done
    k -n "$ns" patch pod "$name" --subresource=status --type=merge -p "{\"status\":{\"phase\":\"Running\",\"hostIP\":\"10.99.0.1\",\"podIP\":\"$ip\",\"podIPs\":[{\"ip\":\"$ip\"}],\"startTime\":\"$t\",\"conditions\":[{\"type\":\"PodScheduled\",\"status\":\"True\",\"lastTransitionTime\":\"$t\"},{\"type\":\"Initialized\",\"status\":\"True\",\"lastTransitionTime\":\"$t\"},{\"type\":\"ContainersReady\",\"status\":\"True\",\"lastTransitionTime\":\"$t\"},{\"type\":\"Ready\",\"status\":\"True\",\"lastTransitionTime\":\"$t\"}],\"containerStatuses\":[$cs]}}" >/dev/null 2>&1
  done
}

register_nodes
last=0
while true; do
  if [ $(( $(date +%s) - last )) -ge 10 ]; then renew_leases; last=$(date +%s); fi
  handle_pods
  sleep "$INTERVAL"
done
