"""ftspec runtime: everything that imports torch. Reached only through a subprocess and plan.json."""
