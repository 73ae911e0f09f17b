"""The local Kiln cluster for development and tests: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, a node simulator, SeaweedFS and the operator,
all as plain processes on loopback. `python -m kiln_local up|down|status`.
"""
