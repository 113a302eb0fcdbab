"""nodesim: a node simulator for memwarden's tests and demo. TEST INFRASTRUCTURE.

It stands in for a kubelet on a machine without a container runtime: it registers a
Node, keeps its Lease fresh, runs the containers of pods bound to it as local processes
(with the pod's environment), enforces memory limits by RSS (SIGKILL, reported as
OOMKilled), runs ephemeral containers as processes that see their target, reports pod
status, and serves cAdvisor-style metrics. It is not a kubelet and isolates nothing:
every container is a plain process of this host. See hack/nodesim/README.md.

    PYTHONPATH=hack python -m nodesim --kubeconfig .devcluster/kubeconfig
"""
