/*
 * Scenario: run the script a second time, with the args in QUPATH_TEST_ARGS (space-separated),
 * as a user runs it again; what it printed goes to OUT_DIR/again.txt.
 */
def printed = new StringWriter()
def a = System.getenv('QUPATH_TEST_ARGS')
runScript(a ? (a.split(' ') as List) : [], printed)
new File(outDir, 'again.txt').setText(printed.toString(), 'UTF-8')
