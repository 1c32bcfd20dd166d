"""Our own JSON schemas for the two KEDA custom resources the manifests use.

kubernetes-validate ships only the core Kubernetes schemas, so ScaledObject and TriggerAuthentication
(keda.sh/v1alpha1) would otherwise go unchecked. These cover the fields KEDA 2.x documents for them, reject
unknown ones (a typo such as `minReplicas` instead of `minReplicaCount` is silently ignored by nothing but
a schema), and insist on strings for trigger metadata (KEDA's type is map[string]string, so `value: 1`
would be refused by the API server). Extend them when the manifests use another documented field.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_COUNT = {"type": "integer", "minimum": 0}

_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def _resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


SCALED_OBJECT = _resource(
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": _NAME,
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "envSourceContainerName": {"type": "string"},
                },
                "additionalProperties": False,
            },
            "pollingInterval": _COUNT,
            "cooldownPeriod": _COUNT,
            "initialCooldownPeriod": _COUNT,
            "idleReplicaCount": _COUNT,
            "minReplicaCount": _COUNT,
            "maxReplicaCount": _COUNT,
            "fallback": {
                "type": "object",
                "required": ["failureThreshold", "replicas"],
                "properties": {"failureThreshold": _COUNT, "replicas": _COUNT, "behavior": {"type": "string"}},
                "additionalProperties": False,
            },
            "advanced": {
                "type": "object",
                "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        # `behavior` is the HPA's own type: the tests check it with the core HPA schema.
                        "properties": {"name": _NAME, "behavior": {"type": "object"}},
                        "additionalProperties": False,
                    },
                    "scalingModifiers": {"type": "object"},
                },
                "additionalProperties": False,
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "authenticationRef": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {
                                "name": _NAME,
                                "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                            },
                            "additionalProperties": False,
                        },
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

TRIGGER_AUTHENTICATION = _resource(
    "TriggerAuthentication",
    {
        "type": "object",
        "minProperties": 1,
        "properties": {
            "secretTargetRef": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["parameter", "name", "key"],
                    "properties": {"parameter": {"type": "string"}, "name": _NAME, "key": {"type": "string"}},
                    "additionalProperties": False,
                },
            },
            "env": {"type": "array"},
            "configMapTargetRef": {"type": "array"},
            "podIdentity": {"type": "object"},
        },
        "additionalProperties": False,
    },
)

# (apiVersion, kind) -> schema: the custom resources the tests know how to check.
SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
}
