#!/usr/bin/env python3
"""Static check of docker/docker-compose.yml (no Docker engine here): it parses, every service
has an image or build, dependencies exist with valid conditions, the reference's volumes and
ports are there, and every variable the compose file reads is documented in .env.example."""
import re
import sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parent.parent / "docker"
text = (root / "docker-compose.yml").read_text()
doc = yaml.safe_load(text)
errors = []
services = doc.get("services", {})
for name, svc in services.items():
    if "image" not in svc and "build" not in svc:
        errors.append(f"{name}: no image or build")
    for dep, cond in (svc.get("depends_on") or {}).items():
        if dep not in services:
            errors.append(f"{name}: depends on unknown service {dep}")
        if cond.get("condition") not in ("service_started", "service_healthy", "service_completed_successfully"):
            errors.append(f"{name}: bad depends_on condition {cond}")
        if cond.get("condition") == "service_healthy" and "healthcheck" not in services.get(dep, {}):
            errors.append(f"{name}: waits for {dep} to be healthy but {dep} has no healthcheck")
for vol in ("hf-cache", "lora-storage", "openclaw-config", "claas-feedback-logs"):
    if vol not in (doc.get("volumes") or {}):
        errors.append(f"volume {vol} missing")
profiles = {p for s in services.values() for p in s.get("profiles", [])}
for p in ("cpu", "gpu", "openclaw"):
    if p not in profiles:
        errors.append(f"profile {p} missing")
ports = {p for s in services.values() for p in s.get("ports", [])}
for want in ("8000:8000", "${CLAAS_API_PORT:-8080}:8080", "${OPENCLAW_PORT:-18789}:18789"):
    if want not in ports:
        errors.append(f"port mapping {want} missing")
env_doc = (root / ".env.example").read_text()
for var in sorted(set(re.findall(r"\$\{([A-Z_]+)", text))):
    if var not in env_doc:
        errors.append(f"${{{var}}} used in compose but not documented in .env.example")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"docker-compose.yml OK: {len(services)} services, profiles {sorted(profiles)}")
