"""Which local program plays a container's image, and with which argv. Pure.

Test infrastructure: there are no images here. An ``ImageRule`` maps an image to a local
entrypoint; the container's ``command`` replaces that entrypoint and its ``args`` follow
it, as in Kubernetes. An image no rule matches runs its ``command`` as a host program if
it has one, else a placeholder that sleeps until SIGTERM. The container's
``terminationMessagePath`` is mapped to a host file (``map_path``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from nodesim.settings import ImageRule

#: The placeholder container: exits 0 on SIGTERM, like a well-behaved server.
PLACEHOLDER_CODE = (
    "import signal, sys\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "while True:\n"
    "    signal.pause()\n"
)


@dataclass(frozen=True)
class Program:
    """What to exec for a container; ``rule`` is None for placeholders and host commands."""

    argv: tuple[str, ...]
    rule: ImageRule | None
    placeholder: bool = False


def match_image(image: str, rules: Sequence[ImageRule]) -> ImageRule | None:
    """The first rule whose pattern occurs in the image reference."""
    for rule in rules:
        if rule.pattern in image:
            return rule
    return None


def container_program(
    *,
    image: str,
    command: Sequence[str],
    args: Sequence[str],
    rules: Sequence[ImageRule],
    python: str,
) -> Program:
    """The argv for a container (``command``/``args`` already ``$(VAR)``-expanded).

    A ``command`` naming the mapped program by its base name (``memwarden capture`` for
    the toolbox image) runs the mapped program: the image's PATH does not exist here.
    """
    rule = match_image(image, rules)
    if rule is not None:
        if command:
            first = command[0]
            if os.path.basename(first) == os.path.basename(rule.entrypoint[0]):
                first = rule.entrypoint[0]
            return Program(argv=(first, *command[1:], *args), rule=rule)
        return Program(argv=(*rule.entrypoint, *args), rule=rule)
    if command:
        return Program(argv=(*command, *args), rule=None)
    return Program(argv=(python, "-c", PLACEHOLDER_CODE), rule=None, placeholder=True)


def map_path(argv: Sequence[str], *, path: str, host_path: str) -> tuple[str, ...]:
    """``argv`` with a container path (the ``terminationMessagePath``) pointing at its host
    stand-in: there is no container filesystem to mount it in, so the path is rewritten
    wherever it occurs (``--termination-log /dev/termination-log``, ``sh -c '... > ...'``).
    """
    if not path:
        return tuple(argv)
    return tuple(arg.replace(path, host_path) for arg in argv)


def listen_address(*, rule: ImageRule | None, pod_ip: str, ports: Sequence[int]) -> str | None:
    """``<podIP>:<first containerPort, else the rule's default>`` for rules that listen."""
    if rule is None or rule.listen_env is None:
        return None
    port = ports[0] if ports else rule.default_port
    return f"{pod_ip}:{port}"
