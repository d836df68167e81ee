"""The hub's version: raised with each release. It is part of every chat answer's `system_fingerprint`
(apps/chat/sampling.py), so a client sees when the serving code changed."""
VERSION = "0.12.0"
