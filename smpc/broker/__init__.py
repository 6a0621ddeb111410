"""The federation's MQTT broker: ACL, Mosquitto configuration and runner, the embedded broker."""
