export { main, buildProgram } from './main.js';
export { ExitCode, EXIT_CODES_HELP, reportError, exitCodeForError, type ExitCodeValue } from './errors.js';
export { ConfigSchema, loadConfig, readConfigFile, validateConfig, DEFAULT_STORE_URI, CONFIG_FILE_NAMES, type LadingConfig, type LadingConfigInput, type ResolvedConfig, type ConfigFlags, type LoadConfigOptions } from './config.js';
export { openConfiguredStore } from './store.js';
