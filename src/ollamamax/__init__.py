"""OllamaMax: a fleet of inference machines served as one Ollama."""

__version__ = "0.1.0"

# The Ollama API version this gateway speaks; clients that check `/api/version` see it.
OLLAMA_API_VERSION = "0.12.6"
