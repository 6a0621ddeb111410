"""Talking MQTT: topics, framing and reassembly of bodies, the TLS connection, reconnecting;
the operator page server."""
