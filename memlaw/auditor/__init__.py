"""The auditor: score an adapter token by token, report, gate CI, repair with MemFT."""

from memlaw.auditor.audit import AuditResult, Gate, RecordAudit, audit, audit_adapter

__all__ = ["AuditResult", "Gate", "RecordAudit", "audit", "audit_adapter"]
