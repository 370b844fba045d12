from echoengine.cli import run

run()
