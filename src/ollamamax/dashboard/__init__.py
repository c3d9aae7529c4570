"""The web dashboard the gateway serves at ``/dashboard``: static HTML, JavaScript and CSS
shipped in this package (no build step, nothing fetched from elsewhere), fed by server-sent
events carrying one JSON snapshot of the cluster a second."""
