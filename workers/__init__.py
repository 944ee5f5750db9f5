"""Dramatiq broker set-up, the actors, the services they call, and the push providers."""
