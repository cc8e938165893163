"""Human-readable plan listing (secrets never shown)."""

from __future__ import annotations

from hotluks.plan.steps import Plan, Step

SHAPE_TEXT = {
    "plain": "no encryption",
    "attached-luks": "LUKS1 header inside the volume (QEMU luks driver)",
    "qcow2-native": "qcow2-native LUKS encryption",
    "detached-header-raw": "LUKS1 with a detached header, raw payload",
    "detached-header-qcow2": "LUKS1 with a detached header, qcow2 payload",
    "librbd": "librbd-native LUKS encryption",
    "librbd-layered": "librbd-native LUKS encryption, layered clone",
}


def describe_step(step: Step) -> str:
    args = step.arguments
    if step.kind == "secret" and step.secret is None:  # an object that holds no secret value (TLS creds)
        return f"object {step.name} {args['qom-type']} {args.get('dir', '')}".rstrip()
    if step.kind == "secret":
        assert step.secret is not None
        return f"secret {step.name} ← {step.secret.ref.describe()}"
    if step.kind == "device":
        where = f" on {args['bus']}" if "bus" in args else ""
        return f"device {args['driver']} {step.name}{where} → {args['drive']}"
    driver = args["driver"]
    detail = args.get("filename") or args.get("image") or args.get("file") or ""
    if driver == "luks":
        detail = f"{args['file']}" + (f" header={args['header']}" if "header" in args else "")
    if "encrypt" in args:
        detail += f" encrypt={args['encrypt']['format']}"
    return f"node {step.name:<18} {driver:<12} {detail}"


def render_listing(plan: Plan) -> str:
    disk = plan.disk
    lines = [f"Plan for {disk.target_dev} ({disk.bus}, {SHAPE_TEXT.get(disk.shape, disk.shape)}): "
             f"{len(plan.steps)} steps"]
    width = max(len(s.command) for s in plan.steps)
    for i, step in enumerate(plan.steps, 1):
        lines.append(f"  {i:>2}. {step.command:<{width}}  {describe_step(step)}")
    lines.append(f"Undo: {', '.join(s.undo_command + ' ' + s.name for s in plan.undo_order())}")
    return "\n".join(lines)
