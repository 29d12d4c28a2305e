import { conformanceSuite } from './conformance/suite.js';

conformanceSuite('cpu', false);
