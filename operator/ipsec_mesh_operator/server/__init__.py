"""The HTTP(S) faces of the operator: mesh API, admission webhooks, connection bounds, health, the servers themselves."""
