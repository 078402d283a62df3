"""gearqueue: RabbitMQ worker daemons for long scientific jobs behind a web platform."""

__version__ = "0.1.0"
