"""The one version string of binance-funding: the API's `/`, the REST User-Agent and every program's --version."""

VERSION = "2.0.0"
