"""Test doubles. Everything here is a fake, named as such; nothing here talks to Docker, SSH or a GPU."""
