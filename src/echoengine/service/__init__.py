"""The detection service behind ``echoengine serve``: HTTP API, detection store, worker and MQTT bridge."""
