// W6: an empty async main; the harness times start-up (fork+exec+wait) and peak RSS.
(async () => {})();
