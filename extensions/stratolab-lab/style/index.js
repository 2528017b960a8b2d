import './base.css';
import './tabs.css';
import './triggers.css';
import './usage.css';
import './pipelines.css';
